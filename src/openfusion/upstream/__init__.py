"""The upstream side: providers, the one HTTP client, and the retry policy. The only code that speaks httpx."""
