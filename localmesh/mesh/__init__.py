"""What the user wrote: names, loading, schema, the mesh state and the applied objects."""
