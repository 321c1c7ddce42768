"""The chaos suite: nemesis, recorded histories, and a checker that judges them."""
