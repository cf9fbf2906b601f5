"""HTTP: wire schemas in, route, lease, proxy, errors out."""
