"""The console's routers: one module per page (or group of pages), each an `APIRouter` under /console."""
