"""Subcommands: name -> one-line help. Each is a module here with add_arguments() and run()."""
COMMANDS = {
    "ask": "answer one request about a tissue with a narrated report",
    "chat": "talk with the agent in the terminal (streaming, /commands, --resume)",
    "domains": "find spatial domains in a slice (ST-LLM pipeline) and score them",
    "eval": "run the tissue-question suite through the agent and print a scorecard",
    "generate": "benchmark cell generation from neighbourhoods (TissueNarrator task)",
    "kb": "build and query the gene-description knowledge store (NCBI Gene, Chroma)",
}
