"""Simulated actors (annotators) that use detloop's services like people do; not product code."""
