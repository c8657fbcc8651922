"""Azure Functions entry point: HTTP routes mapped to xboot.api, nothing more."""

import azure.functions as func

from xboot import api
from xboot.http import respond
from xboot.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="certificate", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def certificate(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: api.enroll_certificate(req.get_body(), Settings.from_environ()))
