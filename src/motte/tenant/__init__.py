"""Code that runs on the tenant's side: it verifies what a keep proves about itself."""
