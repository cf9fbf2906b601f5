from modelyard.cli.main import app

app()
