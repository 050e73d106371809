"""The request path, from an authenticated body to a recorded answer: plan, admit, dispatch, relay, meter.

It knows nothing of HTTP frameworks: it returns small result types that the edge turns into bytes."""
