"""The live service map in the browser: `meshagent ui` (flows aggregated into a graph, sent as deltas)."""
