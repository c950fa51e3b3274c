"""Subcommands: name -> one-line help. Each is a module here with add_arguments() and run()."""
COMMANDS = {
    "domains": "find spatial domains in a slice (ST-LLM pipeline) and score them",
}
