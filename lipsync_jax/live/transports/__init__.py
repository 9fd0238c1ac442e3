"""Live transports: how a client's speech comes in and its frames go out. Each is a module with
`routes(host)`, the aiohttp routes it adds to the server, written against
lipsync_jax.live.control.SessionControl; LiveServer takes a list of them."""
