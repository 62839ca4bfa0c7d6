"""The edge proper: registrar, location service, NAT classification, stateful proxy."""
