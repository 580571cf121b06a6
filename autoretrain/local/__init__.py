"""Local stand-ins for the Azure parts that cannot run on a laptop: the Functions host and Event Grid."""
