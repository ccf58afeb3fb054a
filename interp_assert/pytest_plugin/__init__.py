"""The pytest plugin: options, collection of spec files into items, stash keys."""
