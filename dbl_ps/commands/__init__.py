"""One module per `dbl-ps` subcommand (see `dbl_ps.cli`)."""
