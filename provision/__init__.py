"""Provisioning a fleet: a CA and TLS certificates, broker files, device credentials, doctor."""
