"""Registration: the command line (args, light) and the enrolment client (client: aiohttp and
cryptography, imported only when a registration runs)."""
