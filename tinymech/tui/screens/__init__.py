"""The main screen and the help screen."""
