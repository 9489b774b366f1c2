"""Moving usage events from the edge store into the warehouse, exactly once."""
