"""The edge policy: trusted sources, sanity gate, fingerprints, rate limits, bans, verdicts."""
