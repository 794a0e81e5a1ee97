import os

from django.core.wsgi import get_wsgi_application

from megarouter.bootstrap import exit_on_config_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "megarouter.settings")

application = exit_on_config_error(get_wsgi_application)
