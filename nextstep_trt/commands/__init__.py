"""One module per group of sub-commands; each defines HELP, add_arguments(name, parser) and run(args)."""
