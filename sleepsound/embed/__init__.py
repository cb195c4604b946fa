"""Stream each night, preprocess it into epochs, embed them with a frozen backbone, and cache the result."""
