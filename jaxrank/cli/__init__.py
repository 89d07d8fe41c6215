"""``jaxrank <command>``: the command line over the papers' recipes and the toolbox."""
