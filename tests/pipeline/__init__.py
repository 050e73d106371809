"""Tests of router.pipeline: planning, dispatch, hedging, streaming and metering."""
