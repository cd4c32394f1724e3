"""The JavaScript runtime (kae.mjs, the page, the Node CLI); `kaec export --format web` copies it."""
