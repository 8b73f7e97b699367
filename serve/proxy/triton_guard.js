// njs (ngx_http_js_module >= 0.5) request guard for Triton's KServe-v2 /infer.
// Rejects with 400 what Triton 2.42+ would answer with 500:
//   empty body, body that is not JSON, JSON that is not {"inputs":[{...}]}.
// Leaves alone: binary-tensor requests (Inference-Header-Content-Length),
// compressed bodies (Content-Encoding), non-POST methods (Triton answers 405).
function bad(r, msg) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(400, JSON.stringify({error: msg}) + '\n');
}

function infer(r) {
    if (r.method !== 'POST') { r.internalRedirect('@triton'); return; }

    var enc = r.headersIn['Content-Encoding'];
    if (enc !== undefined && enc.toLowerCase() !== 'identity') {
        r.internalRedirect('@triton');           // cannot inspect; let Triton decide
        return;
    }

    var body = r.requestBuffer;                  // Buffer; undefined if empty or spooled to file
    if (body === undefined || body.length === 0) {
        // Triton would treat an empty body as a zero-byte raw-binary input
        // and the model (PyTriton) fails with 500.
        return bad(r, 'empty request body; expected a JSON inference request');
    }

    var hdr = r.headersIn['Inference-Header-Content-Length'];
    var jsonPart = body;
    if (hdr !== undefined) {
        var n = Number(hdr);
        if (!(n >= 0) || Math.floor(n) !== n || n > body.length) {
            return bad(r, 'invalid Inference-Header-Content-Length');
        }
        if (n === 0) { r.internalRedirect('@triton'); return; }   // raw binary request
        jsonPart = body.slice(0, n);
    }

    var req;
    try {
        req = JSON.parse(jsonPart.toString('utf8'));
    } catch (e) {
        return bad(r, 'request body is not valid JSON');
    }
    if (req === null || typeof req !== 'object' || Array.isArray(req)) {
        return bad(r, 'request JSON must be an object');
    }
    if (!Array.isArray(req.inputs)) {
        return bad(r, "request JSON must have an 'inputs' array");
    }
    for (var i = 0; i < req.inputs.length; i++) {
        var t = req.inputs[i];
        if (t === null || typeof t !== 'object' || Array.isArray(t)
            || typeof t.name !== 'string' || typeof t.datatype !== 'string'
            || !Array.isArray(t.shape)) {
            return bad(r, "each entry of 'inputs' needs string 'name', string 'datatype' and array 'shape'");
        }
    }
    r.internalRedirect('@triton');
}

export default {infer};
