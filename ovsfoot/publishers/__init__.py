"""Publishers: where footprints go for orchestrators to read."""
