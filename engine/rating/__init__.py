"""Rating and plans: tariffs validated, read from plan files, compiled to rate arrays; cycles."""
