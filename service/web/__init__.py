"""The playground: a static page at `/` that calls the service's public endpoints (no build step, no CDN)."""
