"""Playing with a trained model (play.py): the action language and scripted play (`actions`), and the local
web page (`server`, `page.html`)."""
