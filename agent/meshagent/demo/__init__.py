"""`make demo` / `meshagent demo`: a cluster in a box with the agent in standalone mode."""
