"""The HTTP edge: routes parse, call one core function, and render."""
