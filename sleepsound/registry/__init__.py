"""The model store under a storage root: versions, champions, promotion and the fixed evaluation set."""
