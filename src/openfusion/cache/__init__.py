"""The result cache: a repeated fusion request answered from an earlier run of the same request."""
