"""Forms that generate infrastructure: TOML wizards whose answers become reviewed Nickel (issue 14)."""
