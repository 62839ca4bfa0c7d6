"""Boot server: hardening profiles and one sans-I/O driver per phone vendor."""
