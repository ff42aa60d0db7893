"""ErGo's web chat: a Flask app served by gunicorn, each conversation kept in Redis.

`web.serve.run` is what `python main.py --serve` runs; `web.app.create_app` builds the app in each worker.
Imports go one way: web/ uses ergo/, never the reverse.
"""
