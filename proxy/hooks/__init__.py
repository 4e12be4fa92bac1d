"""Memory on the OpenAI routes: recall into the instructions before, capture the turn after."""
