"""One module per `ptft` subcommand (add_arguments + run)."""
