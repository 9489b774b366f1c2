"""Local FAKE provider HTTP servers (Stripe, Razorpay, Vapi) for tests and the demo.

They speak enough of each provider's wire format for the real SDKs to accept them. They are never
used when a real key and base URL are configured.
"""
