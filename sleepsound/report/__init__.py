"""What a run tells its reader: metrics, night summaries, figures and the HTML report."""
