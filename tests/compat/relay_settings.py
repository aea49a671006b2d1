"""The settings the compatibility job starts the relay with, shared by conftest.py (which
passes them to the relay) and the tests (which log in with them)."""

ADMIN_USERNAME = "compat-admin"
ADMIN_PASSWORD = "compat-admin-password"
ADMIN_EMAIL = "compat-admin@example.org"
JWT_SECRET = "pulsar-relay-python-compat-job-secret-0123456789abcdef"
