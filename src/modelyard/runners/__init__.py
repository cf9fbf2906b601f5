"""What every engine's runner shares: the runner seam (``base``), child server processes
(``process``) and GPUs (``gpu``). The runners themselves live with their engines
(``modelyard.engines.<name>.runner``)."""
