"""`openfusion serve --workers N`: how many workers, the supervisor that keeps them, and one worker's life."""
