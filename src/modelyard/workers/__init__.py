"""Programs that run inside runner processes; they import nothing heavy from the gateway."""
