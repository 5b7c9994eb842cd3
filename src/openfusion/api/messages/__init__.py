"""The Anthropic Messages API (`/v1/messages`): one more dialect over the same pipeline."""
