"""The Responses API surface: request translation, event rendering, the route."""
