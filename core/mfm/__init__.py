"""MfM (Many-for-Many): the unified pixel + depth + mask condition for 16 tasks and its light adapter."""
