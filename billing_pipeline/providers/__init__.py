"""Provider API clients (Stripe, Razorpay, Vapi): plain Python, no Dagster."""
