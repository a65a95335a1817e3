"""The nodes users see, one module per canvas group. Importing a module registers its nodes."""
