"""asyncio adapters: UDP endpoints, TCP/TLS connections and the flows that name them."""
